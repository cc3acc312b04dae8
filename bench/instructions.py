"""Instructions per token verification, counted by callgrind: `python -m bench.instructions`.

On a shared 2-core machine rates and even CPU seconds per request move by tens of
per cent from one minute to the next (docs/BENCHMARKS.md); an instruction count
does not: the same code, key and tokens give the same count. The parent writes a
key and tokens to a temporary directory, then runs this module under callgrind
twice, verifying none and then COUNT tokens, and divides the difference by COUNT,
so start-up, imports and the key's loading cancel out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from joserfc.jwk import RSAKey

from services.domain.tokens import TokenCodec, TokenKind
from services.domain.user import UserRecord

COUNT = 200
ISSUER = "zhiva.ai"
LIFETIMES = dict.fromkeys(TokenKind, 3600)
COLLECTED = re.compile(r"Collected : (\d+)")


def _codec(key_file: Path) -> TokenCodec:
    private = RSAKey.import_key(key_file.read_bytes())
    public = RSAKey.import_key(private.as_pem(private=False))
    return TokenCodec(public, private, ISSUER, LIFETIMES)


def verify(directory: Path, count: int) -> None:
    """What runs under callgrind: load the key and tokens, verify `count` of them."""
    codec = _codec(directory / "key.pem")
    tokens = (directory / "tokens.txt").read_text().split()
    codec.verify(tokens[0], (TokenKind.ACCESS, TokenKind.AUTH))  # first-call set-up
    for token in tokens[1 : 1 + count]:
        codec.verify(token, (TokenKind.ACCESS, TokenKind.AUTH))


def instructions(directory: Path, count: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--run",
        str(directory),
        str(count),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    match = COLLECTED.search(result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no count:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=COUNT, help="tokens verified")
    parser.add_argument("--run", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        verify(Path(args.run[0]), int(args.run[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is missing: `infra/install-system-packages.sh --test`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="zhiva-instructions-") as name:
        directory = Path(name)
        key = RSAKey.generate_key(2048, private=True)
        (directory / "key.pem").write_bytes(key.as_pem(private=True))
        codec = _codec(directory / "key.pem")
        identity = UserRecord("Bench Viewer", "bench-viewer", "", False, False, False, 0, "")
        tokens = [codec.issue(TokenKind.ACCESS, identity)[0] for _ in range(args.count + 1)]
        (directory / "tokens.txt").write_text("\n".join(tokens) + "\n")
        print(f"counting instructions under callgrind ({args.count} verifications)...", flush=True)
        none, some = instructions(directory, 0), instructions(directory, args.count)
    print(f"token verification: {(some - none) / args.count:,.0f} instructions each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
