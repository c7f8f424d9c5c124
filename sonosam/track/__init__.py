"""Cine-loop tracking: SAM-family model + optical-flow motion prior, per-frame confidence, interventions.

    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.track import Tracker

    tracker = Tracker(Predictor(load_model()), cine.frames, threshold=0.85, model_every=5)
    tracker.add_object("LV", frame=0, box=(300, 70, 440, 270))
    report = tracker.run()     # pauses on frames that need attention; correct()/accept(), then run() again

See docs/tracking.md.
"""

from .confidence import WEIGHTS, Signals, combine
from .expert import Correction, SimulatedExpert, track_with_expert
from .motion import FlowEstimator, motion_prior
from .synthetic import SyntheticLoop, echo_synthetic_loop, make_synthetic_loop
from .tracker import FrameResult, Intervention, RunReport, TrackedObject, Tracker

__all__ = ["Tracker", "TrackedObject", "FrameResult", "Intervention", "RunReport", "Signals", "combine", "WEIGHTS",
           "FlowEstimator", "motion_prior", "SimulatedExpert", "Correction", "track_with_expert",
           "SyntheticLoop", "make_synthetic_loop", "echo_synthetic_loop"]
