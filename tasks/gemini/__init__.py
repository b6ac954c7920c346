"""The one boundary with google-genai: every call to the Gemini API (online embeddings, Batch API,
Files API) is made here and returns plain data or raises the project's errors.

`sdk_hooks` holds the only uses of the SDK's private parts; `tests/tasks/test_gemini_sdk_hooks.py`
fails loudly when an upgrade moves them. Nothing outside this package imports google-genai.
"""
