"""Orthanc Explorer driven in headless Chromium: open with `?token=`, upload, look a study up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from .dicom import sample_file


def unique_dicom(directory: Path, label: str) -> tuple[Path, str]:
    """CT_small with new UIDs, patient and description: a file no other test uploads."""
    dataset = pydicom.dcmread(sample_file("CT_small.dcm"))
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientName = f"Zhiva^{label}"
    dataset.PatientID = label
    dataset.StudyDescription = f"Study {label}"
    path = directory / f"{label}.dcm"
    dataset.save_as(path)
    return path, dataset.StudyInstanceUID


class ExplorerPage:
    """`explorer_url` is …/app/explorer.html (straight from Orthanc or behind nginx's /zhiva)."""

    def __init__(self, page: Any, explorer_url: str, token: str) -> None:
        self.page = page
        self.explorer_url = explorer_url
        self.token = token
        self.failed: list[tuple[str, str, int]] = []
        page.on("response", self._watch)

    def _watch(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append((response.request.method, response.url, response.status))

    def open(self) -> None:
        self.page.goto(f"{self.explorer_url}?token={self.token}")
        self.page.wait_for_selector("#lookup.ui-page-active")

    def upload(self, path: Path) -> int:
        """Upload through the Upload page; returns the HTTP status of Explorer's POST."""
        self.page.click("#lookup a[href='#upload']")
        self.page.wait_for_selector("#upload.ui-page-active")
        self.page.set_input_files("#fileupload", str(path))
        with self.page.expect_response(
            lambda r: r.request.method == "POST" and "/instances" in r.url
        ) as answer:
            self.page.click("#upload-button")
        return answer.value.status

    def lookup(self, patient_id: str) -> str:
        """The lookup page's result list for one patient ID (Explorer's POST /tools/find)."""
        self.page.evaluate("window.location.hash = '#lookup'")
        self.page.wait_for_selector("#lookup.ui-page-active")
        self.page.fill("#lookup-patient-id", patient_id)
        with self.page.expect_response(
            lambda r: r.request.method == "POST" and "/tools/find" in r.url
        ) as answer:
            self.page.click("#lookup-submit")
        assert answer.value.status == 200, answer.value.status
        self.page.wait_for_selector("#lookup-result li", state="attached")
        return self.page.inner_text("#lookup-result")
