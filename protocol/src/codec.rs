//! The one codec for cluster frames: bincode (standard config) over serde, with a hard size
//! limit so a hostile or corrupt length prefix can never make a node allocate unbounded memory.
//!
//! Every frame starts with a one-byte format version so incompatible nodes fail with a clear
//! error instead of misreading each other.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame conclave will encode or decode: 16 MiB. Long answers times many agents
/// fit comfortably; anything larger is a bug or an attack.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The frame format version written as the first byte of every frame.
pub const FRAME_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame could not be encoded: {0}")]
    Encode(String),
    #[error("frame is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("frame is empty")]
    Empty,
    #[error(
        "frame has format version {found}, this node speaks version {expected}; run the same conclave version on every node"
    )]
    Version { found: u8, expected: u8 },
    #[error("frame could not be decoded: {0}")]
    Decode(String),
    #[error("frame has {0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes a message as a versioned frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![FRAME_VERSION];
    let body = bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() + 1 > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            size: body.len() + 1,
            limit: MAX_FRAME_BYTES,
        });
    }
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a versioned frame. Any byte string gives either the message or an error; never a
/// panic, never an allocation past [`MAX_FRAME_BYTES`].
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            size: frame.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let (&version, body) = frame.split_first().ok_or(CodecError::Empty)?;
    if version != FRAME_VERSION {
        return Err(CodecError::Version {
            found: version,
            expected: FRAME_VERSION,
        });
    }
    let (message, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(message)
}
