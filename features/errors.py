"""Errors that are not the utterance's: raised by a field's extract, they mark a job-level failure.

A `ModelUnavailable` (a model or its weights cannot be loaded) fails the same way for every
utterance of the job, so the extraction job records it per field (`field_<name>` = error, stage
`model`) without counting it against the utterances' own data, says it once, exits 1, and a
re-run redoes the (shard, field) pairs it marked.
"""
from __future__ import annotations


class ModelUnavailable(RuntimeError):
    """A field's model cannot be used at all (no weights, a bad path): a job-level failure."""

    stage = "model"
