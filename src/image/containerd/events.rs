//! containerd's event stream: what `watch` follows. A subscription answers only with its first
//! event, so whether containerd is there is asked first with a call that answers at once; a
//! stream that breaks is opened again on a new connection, and the caller is told that events
//! may have been missed meanwhile.

use super::{api, filter_quote, Client, CONNECT_TIMEOUT};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;
use tonic::{Request, Status};

/// What [`watch`] saw.
pub enum Event {
    /// The stream is open (first time, or again after containerd came back).
    Connected { again: bool },
    /// An image of the repository was created or updated.
    Image { topic: String, name: String },
}

/// Follows containerd's image events in `namespace` for images of `repo`, calling `on` for
/// each, until `on` returns false. A broken stream (containerd restarted) is opened again
/// after `retry`; what happened meanwhile is unknown, which `Connected { again: true }` says.
pub fn watch(
    address: &Path,
    namespace: &str,
    repo: &str,
    retry: Duration,
    on: &mut dyn FnMut(Event) -> bool,
) -> Result<()> {
    let mut again = false;
    loop {
        // A new connection each time: a channel whose peer went away is not trusted to
        // reconnect by itself.
        let client = Client::new(address, namespace)?;
        // containerd answers a subscription only with its first event, so whether it is there
        // is asked first, with a call that answers at once.
        let mut v = api::version_client::VersionClient::new(client.0.channel.clone());
        if let Err(e) = client.call(
            "asking containerd's version",
            CONNECT_TIMEOUT * 2,
            async move { v.version(()).await },
        ) {
            log::warn!("{e:#}; trying again in {}s", retry.as_secs());
            std::thread::sleep(retry);
            again = true;
            continue;
        }
        if !on(Event::Connected { again }) {
            return Ok(());
        }
        let mut c = api::events_client::EventsClient::new(client.0.channel.clone());
        let req = Request::new(api::SubscribeRequest {
            filters: vec![format!(
                "namespace=={},topic~={}",
                filter_quote(namespace),
                filter_quote("^/images/(create|update)$")
            )],
        });
        let ended: Result<bool, Status> = client.0.rt.block_on(async {
            let mut stream = c.subscribe(req).await?.into_inner();
            while let Some(env) = stream.message().await? {
                if let Some(ev) = image_event(env, namespace, repo) {
                    if !on(ev) {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        });
        match ended {
            Ok(true) => return Ok(()),
            Ok(false) => log::warn!(
                "{}: the event stream ended; opening it again in {}s",
                client.describe(),
                retry.as_secs()
            ),
            Err(st) => log::warn!(
                "{:#}; opening it again in {}s",
                client.explain("following image events", &st),
                retry.as_secs()
            ),
        }
        std::thread::sleep(retry);
        again = true;
    }
}

/// The event, if it is the creation or update of an image of `repo` (`repo:tag`) in
/// `namespace`.
fn image_event(
    env: containerd_client::types::Envelope,
    namespace: &str,
    repo: &str,
) -> Option<Event> {
    use prost::Message;
    if env.namespace != namespace {
        return None;
    }
    let any = env.event?;
    let name = match env.topic.as_str() {
        "/images/create" => api::ImageCreate::decode(any.value.as_slice()).map(|e| e.name),
        "/images/update" => api::ImageUpdate::decode(any.value.as_slice()).map(|e| e.name),
        _ => return None,
    };
    let Ok(name) = name else {
        log::warn!("an image event ({}) that does not decode", env.topic);
        return None;
    };
    let ours = name
        .strip_prefix(repo)
        .and_then(|r| r.strip_prefix(':'))
        .is_some_and(|t| !t.is_empty() && !t.contains('/') && !t.contains('@'));
    ours.then_some(Event::Image {
        topic: env.topic,
        name,
    })
}
