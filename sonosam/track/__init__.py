"""Cine-loop tracking: SAM-family model + optical-flow motion prior, per-frame confidence, interventions.

    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.track import Tracker

    tracker = Tracker(Predictor(load_model()), cine.frames, threshold=0.85, model_every=5)
    tracker.add_object("LV", frame=0, box=(300, 70, 440, 270))
    report = tracker.run()     # pauses on frames that need attention; correct()/accept(), then run() again

See docs/tracking.md.
"""

from ..lazy import lazy_attributes

# Loaded on first use, so that `sonosam.track.outputs` (and the command line's checks) do not import torch.
_HOMES = {"WEIGHTS": "confidence", "Signals": "confidence", "combine": "confidence",
          "Correction": "expert", "SimulatedExpert": "expert", "track_with_expert": "expert",
          "FlowEstimator": "motion", "motion_prior": "motion",
          "SyntheticLoop": "synthetic", "echo_synthetic_loop": "synthetic", "make_synthetic_loop": "synthetic",
          "FrameResult": "tracker", "Intervention": "tracker", "RunReport": "tracker", "TrackedObject": "tracker",
          "Tracker": "tracker", "TrackerOptions": "tracker", "Fusion": "tracker", "Anchor": "tracker"}

__all__ = ["Tracker", "TrackerOptions", "Fusion", "Anchor", "TrackedObject", "FrameResult", "Intervention", "RunReport", "Signals", "combine", "WEIGHTS",
           "FlowEstimator", "motion_prior", "SimulatedExpert", "Correction", "track_with_expert",
           "SyntheticLoop", "make_synthetic_loop", "echo_synthetic_loop"]

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
