"""Rectified-flow objective and sampling."""
