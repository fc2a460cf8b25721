"""The SMTP submission server (RFC 6409): legacy programs send through the sending core over SMTP."""
