"""Network boot: a read-only TFTP server that serves only the bytes of verified releases."""
