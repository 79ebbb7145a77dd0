"""neuralnets: deep-learning models for neural population spiking data."""

__version__ = "0.1.0"
