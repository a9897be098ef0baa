"""Key providers: a passphrase-protected keyring folder and PKCS#11 HSMs."""
