//! The remotable message type of conclave's inbox actors: [`Frame<T>`], one cluster message
//! (`ToHost` or `ToOrchestrator`) that ractor_cluster carries as a `Cast` whose payload is a
//! frame of conclave's own codec.
//!
//! Only [`Frame`] is remotable. Inbox actors do nothing but hand decoded frames to a local,
//! non-remotable actor, so nothing else on a node can be reached over the network. A frame
//! that does not decode (corrupt, another version, over the size limit) is dropped with a
//! warning; it never reaches the receiving actor and never panics.

use conclave_protocol::cluster::{FRAME_VARIANT, ToHost, ToOrchestrator};
use conclave_protocol::{decode, encode};
use ractor::ActorRef;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use tracing::warn;

/// One cluster message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<T>(pub T);

macro_rules! remotable {
    ($t:ty) => {
        impl ractor::Message for Frame<$t> {
            fn serializable() -> bool {
                true
            }

            fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
                match encode(&self.0) {
                    Ok(args) => Ok(SerializedMessage::Cast {
                        variant: FRAME_VARIANT.to_owned(),
                        args,
                        metadata: None,
                    }),
                    Err(error) => {
                        warn!(%error, "cluster frame not sent");
                        Err(BoxedDowncastErr)
                    }
                }
            }

            fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
                match message {
                    SerializedMessage::Cast { variant, args, .. } if variant == FRAME_VARIANT => {
                        decode(&args).map(Frame).map_err(|error| {
                            warn!(%error, bytes = args.len(), "undecodable cluster frame dropped");
                            BoxedDowncastErr
                        })
                    }
                    _ => {
                        warn!("cluster message that is not a conclave frame dropped");
                        Err(BoxedDowncastErr)
                    }
                }
            }
        }
    };
}

remotable!(ToHost);
remotable!(ToOrchestrator);

/// A (usually remote) agent node's inbox.
pub type HostInbox = ActorRef<Frame<ToHost>>;
/// A (usually remote) orchestrator's inbox.
pub type OrchestratorInbox = ActorRef<Frame<ToOrchestrator>>;

/// A frame that could not be handed to the link (the peer's inbox is gone, or the frame did
/// not encode). The frame itself is dropped: the link's liveness checks deal with the peer.
#[derive(Debug, thiserror::Error)]
#[error("cluster frame not sent: {0}")]
pub struct SendError(String);

/// Sends one message to an agent node.
pub fn send_to_host(host: &HostInbox, message: ToHost) -> Result<(), SendError> {
    host.send_message(Frame(message))
        .map_err(|e| SendError(e.to_string()))
}

/// Sends one message to an orchestrator.
pub fn send_to_orchestrator(
    orchestrator: &OrchestratorInbox,
    message: ToOrchestrator,
) -> Result<(), SendError> {
    orchestrator
        .send_message(Frame(message))
        .map_err(|e| SendError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::Message;

    #[test]
    fn frames_serialize_to_codec_bytes_and_bad_bytes_are_refused() {
        let message = Frame(ToOrchestrator::Heartbeat { link: 9 });
        let serialized = message.clone().serialize().unwrap();
        let SerializedMessage::Cast { variant, args, .. } = &serialized else {
            panic!("a frame is a cast");
        };
        assert_eq!(variant, FRAME_VARIANT);
        assert_eq!(
            decode::<ToOrchestrator>(args).unwrap(),
            ToOrchestrator::Heartbeat { link: 9 }
        );
        assert_eq!(
            Frame::<ToOrchestrator>::deserialize(serialized).unwrap(),
            message
        );
        let garbage = SerializedMessage::Cast {
            variant: FRAME_VARIANT.to_owned(),
            args: vec![1, 255, 255, 255],
            metadata: None,
        };
        assert!(Frame::<ToHost>::deserialize(garbage).is_err());
        let other = SerializedMessage::Cast {
            variant: "other".to_owned(),
            args: Vec::new(),
            metadata: None,
        };
        assert!(Frame::<ToHost>::deserialize(other).is_err());
    }
}
