"""Observers see every finished request (metrics, active learning); they never slow or fail one."""
