"""The parts of the matting engine :class:`~icm_core.pipeline.IconMatting`, one concern per module.

* :mod:`.context` - the frozen data passed between the engine and its callers (:class:`ReferenceContext`,
  :class:`PromptExpansion`, :class:`RefinementConfig`) and :func:`combine_contexts`.
* :mod:`.reference` - reference images + masks or prompts -> RoI tokens (encoding, prompt expansion).
* :mod:`.targets` - targets in micro-batches, to the model's square and back to their own size.
* :mod:`.decoding` - the in-context decoder, always in fp32 (:func:`decode_alpha`).
* :mod:`.finite` - NaN/Inf checks on the model's features and alpha.

``icm_core.pipeline`` is the public entry point and re-exports every public name.
"""
