"""Experiment tracking (TensorBoard, MLflow) beside the run folder, which stays the source of truth.

`session.tracking` opens the configured backend (``track.backend``) for a study; the study calls the
`base.Tracker` methods (params once, a history row per epoch, test metrics, artefact files). The
package __init__ imports nothing.
"""
