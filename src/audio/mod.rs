//! The audio chain: processing stages between the microphone and the AAC encoder.
