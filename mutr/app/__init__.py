"""``mutr app``: a local web page that segments a video by text or by its own sound.

:mod:`mutr.app.jobs` runs one job with no web code (``mutr.Predictor`` + ``mutr.outputs``);
:mod:`mutr.app.page` is the Gradio page around it (optional extra: ``pip install "mutr[app]"``).
Importing this package does not import Gradio.
"""
