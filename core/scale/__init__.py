"""Devices and processes: the data mesh, joining a multi-process job, launching a local one."""
