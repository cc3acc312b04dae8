"""Helpers for the browser tests: headless Debian Chromium and a stand-in viewer page."""
