"""Blob storage: deduplicating writes into packs, index deltas, and blob reads."""
