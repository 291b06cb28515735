"""Composer callbacks of the recipe."""

from .power_ema import PowerEMA, power_ema_beta, power_ema_gamma, update_ema_

__all__ = ["PowerEMA", "power_ema_beta", "power_ema_gamma", "update_ema_"]
