"""RTSP (RFC 2326): enough of it to tell why a stream does not open - a pure codec for the
DESCRIBE exchange and a blocking probe the capture thread runs after OpenCV gives up."""
