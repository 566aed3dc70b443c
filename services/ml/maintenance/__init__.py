"""Predictive maintenance: remaining-useful-life models trained on run-to-failure histories
(`model`), their windowed features (`features`), request validation (`spec`), the entities' stored
histories (`store`) and the component that trains, predicts, caches and publishes (`component`).

scikit-learn is imported by `model` only, which the component loads when it first trains or
predicts, so importing this package costs nothing at start-up."""
