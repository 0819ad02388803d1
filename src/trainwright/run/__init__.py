"""The run: its folder and lock, the plan (start, resume or nothing to do), durable files, stop signals, exit
codes and the metric logs."""
