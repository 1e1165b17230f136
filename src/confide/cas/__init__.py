"""The Configuration and Attestation Service (CAS): policies, governance, secrets, attestation."""
