"""The runtime (``confide run``): obtains evidence inside the TEE, attests to the CAS, injects
the configuration and execs the program."""
