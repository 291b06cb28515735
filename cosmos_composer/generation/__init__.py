"""The pieces of generation that :mod:`cosmos_composer.generate` puts together.

* :mod:`.inputs`: control / conditioning videos: camera names, finding one mp4 per camera, reading and resizing;
* :mod:`.prompts`: per-view prompts, negative prompts and cached text embeddings -> text contexts;
* :mod:`.outputs`: decoded latents -> mp4 files (one per view and the tiled overview for multiview).

``scripts/generate.py`` and the training callback ``callbacks/sample_videos.py`` use the same functions.
"""


class GenerationError(ValueError):
    """Invalid generation inputs; the message names the file or option and the fix."""
