"""SIP for the GB/T 28181 police sink: a pure codec and digest auth, and a UDP transport."""
