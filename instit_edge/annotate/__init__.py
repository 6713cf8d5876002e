"""Inst-IT annotation pipeline: mark every instance of every frame, ask a teacher model (any OpenAI-compatible
endpoint) for instance / image / temporal captions, a video summary and QA pairs, write an Inst-IT Dataset."""
