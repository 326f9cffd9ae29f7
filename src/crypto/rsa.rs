//! RSA: MEGA's MPI-encoded keys and raw RSA; RSA-OAEP-SHA512 with DER keys for Filen.
