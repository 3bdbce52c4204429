"""Replaying captures split over processes."""
