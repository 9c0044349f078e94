//! The remotable inbox actor: the only actor of a conclave node that other nodes can reach.
//! It hands every decoded [`Frame`] to a local function (a send into a non-remotable actor)
//! and does nothing else.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::wire::Frame;

/// Where an inbox delivers; returns false once the receiver is gone (the inbox then stops).
pub type Deliver<T> = Arc<dyn Fn(T) -> bool + Send + Sync>;

/// The inbox actor for frames of type `T`.
pub struct Inbox<T>(PhantomData<fn(T)>);

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T> Actor for Inbox<T>
where
    T: Send + Sync + 'static,
    Frame<T>: ractor::Message,
{
    type Msg = Frame<T>;
    type State = Deliver<T>;
    type Arguments = Deliver<T>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Frame<T>>,
        deliver: Deliver<T>,
    ) -> Result<Deliver<T>, ActorProcessingErr> {
        Ok(deliver)
    }

    async fn handle(
        &self,
        myself: ActorRef<Frame<T>>,
        message: Frame<T>,
        deliver: &mut Deliver<T>,
    ) -> Result<(), ActorProcessingErr> {
        if !deliver(message.0) {
            myself.stop(Some("receiver gone".into()));
        }
        Ok(())
    }
}

/// Spawns an inbox linked to `owner`, joined to `groups` of the conclave pg scope.
pub async fn spawn_inbox<T>(
    owner: ActorCell,
    groups: &[String],
    deliver: Deliver<T>,
) -> Result<ActorRef<Frame<T>>, ractor::SpawnErr>
where
    T: Send + Sync + 'static,
    Frame<T>: ractor::Message,
{
    let (inbox, _) = Actor::spawn_linked(None, Inbox::<T>::default(), deliver, owner).await?;
    for group in groups {
        ractor::pg::join_scoped(
            conclave_protocol::cluster::SCOPE.to_owned(),
            group.clone(),
            vec![inbox.get_cell()],
        );
    }
    Ok(inbox)
}
