// The "Copy token" button. Without JavaScript the token stays selectable in its box.
(function () {
  "use strict";
  var button = document.getElementById("copy-token");
  var status = document.getElementById("copy-status");
  if (!button) { return; }
  var box = document.getElementById(button.getAttribute("data-target"));
  button.hidden = false;

  function say(text) { status.textContent = text; }

  function fallbackCopy() {
    box.focus();
    box.select();
    try {
      return document.execCommand("copy");
    } catch (e) {
      return false;
    }
  }

  button.addEventListener("click", function () {
    var text = box.value.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { say("Copied."); },
        function () { say(fallbackCopy() ? "Copied." : "Copy failed: select the token and copy it."); }
      );
    } else {
      say(fallbackCopy() ? "Copied." : "Copy failed: select the token and copy it.");
    }
  });
})();
