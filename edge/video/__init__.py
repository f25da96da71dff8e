"""Video health and tamper detection on the cameras' RTSP streams, with OpenCV.

``analysis`` holds the pure functions and the per-camera state machines (frames and times in,
conditions out; no I/O); ``capture`` reads a stream in its own thread and hands the analysis
results to the asyncio loop; ``monitor`` turns them into device status, telemetry and events.
"""
