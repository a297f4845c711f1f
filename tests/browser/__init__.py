"""Browser tests: the chat page in headless Chromium (Debian's, driven by Playwright)."""
