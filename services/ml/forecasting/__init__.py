"""Forecasting: statsforecast models and Prophet, `auto` selection by rolling-origin backtest,
threshold crossing. statsforecast and prophet are imported inside the worker processes only."""
