//! containerd through its own gRPC API on its socket, the interface its users (the kubelet,
//! nerdctl, crictl) use, in place of the debug client `ctr`:
//!
//! * the images service lists the repository's images;
//! * the content service streams manifests, configs and layer blobs (the caller checks each
//!   against its digest);
//! * the leases service protects what a run reads: a lease is created on the first read and
//!   every blob is added to it before it is read, so containerd's garbage collector keeps them
//!   while an image is untagged under a running sync. The lease is deleted when the client is
//!   dropped; a killed run leaves it to expire (`containerd.io/gc.expire`, one hour), after
//!   which the next garbage collection removes it and whatever only it kept;
//! * the CRI image service (`runtime.v1.ImageService/PullImage`, as the kubelet and `crictl
//!   pull` call it) pulls: containerd fetches with its own registry configuration, mirrors and
//!   credentials, and unpacks as for a pod, so this process never opens the network and never
//!   holds a registry secret;
//! * the events service tells [`watch`] when an image is created or updated.
//!
//! This folder: `mod.rs` the client and the calls a sync makes; `events.rs` the event stream;
//! `snapshots.rs` the snapshot views a sync reads an unpacked image through.
//!
//! One small tokio runtime per client drives the calls; the rest of the program stays
//! synchronous. Every call is bounded in time; a pull that overruns is cancelled (the RPC is
//! reset, which cancels containerd's pull). Nothing here runs a process.

mod events;
mod snapshots;

pub use events::{watch, Event};

use super::Candidate;
use anyhow::{bail, Context, Result};
use containerd_client::services::v1 as api;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How long one unary call (a listing, a lease change) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP/2 receive window of a stream (the connection's is twice it): what containerd may
/// send ahead of the reader.
const STREAM_WINDOW: u32 = 256 * 1024;
/// How long a lease outlives a run that was killed before it could delete it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

pub(super) use snapshots::Mount;

/// A connection to one containerd socket and namespace; clones share it (and its lease).
#[derive(Clone)]
pub(super) struct Client(Arc<Inner>);

struct Inner {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    address: PathBuf,
    namespace: String,
    /// The lease protecting what this client read, once it read something.
    lease: Mutex<Option<String>>,
    /// The blobs already added to it.
    protected: Mutex<std::collections::HashSet<String>>,
}

impl Client {
    /// A client for `address` in `namespace`. The socket is connected on the first call, so a
    /// client costs nothing until it is used.
    pub(super) fn new(address: &Path, namespace: &str) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("containerd-client")
            .enable_all()
            .build()
            .context("starting the runtime for containerd's API")?;
        let path = address.to_path_buf();
        let channel = {
            let _guard = rt.enter();
            Endpoint::from_static("http://containerd.sock")
                .connect_timeout(CONNECT_TIMEOUT)
                // HTTP/2 flow control bounds what containerd may send before the reader
                // takes it: hyper's defaults (2 MiB a stream, 5 MiB the connection) let a
                // blob read buffer megabytes ahead of the tar reader; a local socket needs
                // no more than a few frames in flight.
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(STREAM_WINDOW * 2)
                .connect_with_connector_lazy(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
        };
        Ok(Client(Arc::new(Inner {
            rt,
            channel,
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
            lease: Mutex::new(None),
            protected: Mutex::default(),
        })))
    }

    /// For messages: "containerd at SOCKET (namespace NS)".
    pub(super) fn describe(&self) -> String {
        format!(
            "containerd at {} (namespace {})",
            self.0.address.display(),
            self.0.namespace
        )
    }

    /// A request in this client's namespace, under its lease when it has one.
    fn request<T>(&self, msg: T, lease: Option<&str>) -> Result<Request<T>> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        md.insert(
            "containerd-namespace",
            self.0.namespace.parse().with_context(|| {
                format!("the namespace {:?} is not a valid header", self.0.namespace)
            })?,
        );
        if let Some(l) = lease {
            md.insert("containerd-lease", l.parse().context("lease id")?);
        }
        Ok(r)
    }

    /// Runs one call to its end, or fails after `limit`.
    fn call<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T> {
        match self
            .0
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(st)) => Err(self.explain(what, &st)),
            Err(_) => bail!(
                "{what}: {} did not answer within {}s; check that containerd runs and is not \
                 overloaded",
                self.describe(),
                limit.as_secs()
            ),
        }
    }

    /// An error that says what was being done, to which containerd, and what to do.
    fn explain(&self, what: &str, st: &Status) -> anyhow::Error {
        let msg = st.message();
        let hint = match st.code() {
            Code::Unavailable | Code::Unknown if msg.contains("connect") || msg.contains("transport") => {
                "check that containerd runs and that image.containerd_address is its socket"
            }
            Code::Unavailable => "check that containerd runs and that image.containerd_address is its socket",
            Code::NotFound => "it is not (or no longer) in containerd; the next sync tries again",
            Code::Unimplemented => {
                "this containerd does not offer that service (the CRI plugin must be enabled for pulls)"
            }
            Code::DeadlineExceeded | Code::Cancelled => "it took too long; the next sync tries again",
            _ => "see containerd's log (journalctl -u containerd)",
        };
        anyhow::anyhow!(
            "{what}: {} said {:?}: {}; {hint}",
            self.describe(),
            st.code(),
            msg.trim()
        )
    }

    /// The images of `repo` that containerd has: `repo:tag` names only (not `repo@digest` or
    /// the CRI's `sha256:` IDs), with the digest of what each points at.
    pub(super) fn list(&self, repo: &str) -> Result<Vec<Candidate>> {
        let mut c = api::images_client::ImagesClient::new(self.0.channel.clone());
        // The name filter is a prefix match done by containerd; the tag is checked here.
        let filter = format!(
            "name~={}",
            filter_quote(&format!("^{}:", regex_quote(repo)))
        );
        let req = self.request(
            api::ListImagesRequest {
                filters: vec![filter],
            },
            None,
        )?;
        let resp = self.call(
            &format!("listing the images of {repo}"),
            CALL_TIMEOUT,
            async move { c.list(req).await },
        )?;
        let mut out = Vec::new();
        for img in resp.into_inner().images {
            let Some(tag) = img
                .name
                .strip_prefix(repo)
                .and_then(|r| r.strip_prefix(':'))
            else {
                continue;
            };
            if tag.is_empty() || tag.contains('/') || tag.contains('@') {
                continue;
            }
            let Some(target) = img.target else { continue };
            out.push(Candidate {
                reference: img.name.clone(),
                tag: tag.to_string(),
                digest: target.digest,
                created: None,
            });
        }
        Ok(out)
    }

    /// This client's lease, created on first use.
    fn lease(&self) -> Result<String> {
        let mut held = self.0.lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = held.as_ref() {
            return Ok(id.clone());
        }
        let id = format!(
            "mw-experimental-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let expire = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + LEASE_EXPIRY);
        let mut c = api::leases_client::LeasesClient::new(self.0.channel.clone());
        let req = self.request(
            api::CreateRequest {
                id: id.clone(),
                labels: [("containerd.io/gc.expire".to_string(), expire.to_string())].into(),
            },
            None,
        )?;
        self.call(
            "creating a lease for the sync's reads",
            CALL_TIMEOUT,
            async move { c.create(req).await },
        )?;
        log::debug!("holding containerd lease {id}");
        *held = Some(id.clone());
        Ok(id)
    }

    /// Adds a blob to this client's lease, so garbage collection keeps it while it is read.
    pub(super) fn protect(&self, digest: &str) -> Result<String> {
        let id = self.lease()?;
        let mut done = self.0.protected.lock().unwrap_or_else(|e| e.into_inner());
        if done.contains(digest) {
            return Ok(id);
        }
        let mut c = api::leases_client::LeasesClient::new(self.0.channel.clone());
        let req = self.request(
            api::AddResourceRequest {
                id: id.clone(),
                resource: Some(api::Resource {
                    id: digest.to_string(),
                    r#type: "content".to_string(),
                }),
            },
            None,
        )?;
        self.call(
            &format!("adding {digest} to lease {id}"),
            CALL_TIMEOUT,
            async move { c.add_resource(req).await },
        )?;
        done.insert(digest.to_string());
        Ok(id)
    }

    /// A blob's bytes, streamed from the content store under the lease (the caller checks the
    /// digest). A blob that is gone fails here or at the first read, never as a short read.
    pub(super) fn read(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        let lease = self.protect(digest)?;
        let mut c = api::content_client::ContentClient::new(self.0.channel.clone());
        let req = self.request(
            api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            Some(&lease),
        )?;
        let what = format!("reading the blob {digest}");
        let stream = self.call(&what, CALL_TIMEOUT, async move { c.read(req).await })?;
        Ok(Box::new(BlobReader {
            client: self.clone(),
            stream: stream.into_inner(),
            buf: Vec::new(),
            pos: 0,
            what,
        }))
    }

    /// Pulls `reference` through the CRI image service on the same socket, as the kubelet
    /// does; cancelled at `timeout`. containerd resolves, authenticates (its CRI registry
    /// configuration) and unpacks; the CRI plugin always pulls into its own namespace (k8s.io).
    pub(super) fn pull(&self, reference: &str, timeout: Duration) -> Result<String> {
        use k8s_cri::v1::image_service_client::ImageServiceClient;
        let mut c = ImageServiceClient::new(self.0.channel.clone());
        let req = Request::new(k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        });
        log::info!(
            "pulling {reference} through the CRI image service of {}",
            self.describe()
        );
        let what = format!("pulling {reference}");
        match self
            .0
            .rt
            .block_on(async move { tokio::time::timeout(timeout, c.pull_image(req)).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner().image_ref),
            Ok(Err(st)) if st.code() == Code::Unimplemented => Err(self.explain(&what, &st)),
            Ok(Err(st)) => bail!(
                "{what}: containerd's CRI image service at {} failed: {}; check that the registry \
                 is reachable and has that tag, and that containerd's CRI registry configuration \
                 holds its credentials (containerd's log has the registry's answer); the tree was \
                 left as it is",
                self.0.address.display(),
                st.message().trim()
            ),
            Err(_) => bail!(
                "{what}: no answer within {}s (image.pull_timeout_seconds); the pull was \
                 cancelled and the tree left as it is; check that the registry is reachable, or \
                 pull it by hand (crictl pull {reference})",
                timeout.as_secs()
            ),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(id) = self.lease.get_mut().ok().and_then(|l| l.take()) else {
            return;
        };
        let mut c = api::leases_client::LeasesClient::new(self.channel.clone());
        let mut req = Request::new(api::DeleteRequest {
            id: id.clone(),
            sync: false,
        });
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        let r = self
            .rt
            .block_on(async move { tokio::time::timeout(CALL_TIMEOUT, c.delete(req)).await });
        match r {
            Ok(Ok(_)) => log::debug!("released containerd lease {id}"),
            Ok(Err(e)) => log::warn!(
                "releasing containerd lease {id}: {}; it expires within the hour",
                e.message()
            ),
            Err(_) => {
                log::warn!("releasing containerd lease {id}: no answer; it expires within the hour")
            }
        }
    }
}

/// A blob as a `Read`: the content service's stream, one message at a time.
struct BlobReader {
    client: Client,
    stream: tonic::Streaming<api::ReadContentResponse>,
    buf: Vec<u8>,
    pos: usize,
    what: String,
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let stream = &mut self.stream;
            let next = self
                .client
                .0
                .rt
                .block_on(async { tokio::time::timeout(CALL_TIMEOUT, stream.message()).await });
            match next {
                Ok(Ok(Some(m))) => {
                    self.buf = m.data;
                    self.pos = 0;
                }
                Ok(Ok(None)) => return Ok(0),
                Ok(Err(st)) => {
                    return Err(std::io::Error::other(format!(
                        "{:#}",
                        self.client.explain(&self.what, &st)
                    )))
                }
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "{}: no data for {}s",
                        self.what,
                        CALL_TIMEOUT.as_secs()
                    )))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `s` with the regular-expression metacharacters escaped, for containerd's `~=` filters.
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as a double-quoted value of containerd's filter syntax (Go's string quoting).
fn filter_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::{filter_quote, regex_quote};

    #[test]
    fn repository_names_are_quoted_for_the_name_filter() {
        assert_eq!(
            regex_quote("docker-registry.discovery.wmnet/restricted/mediawiki-multiversion"),
            "docker-registry\\.discovery\\.wmnet/restricted/mediawiki-multiversion"
        );
        assert_eq!(regex_quote("a+b"), "a\\+b");
        assert_eq!(filter_quote("^a\\.b\""), "\"^a\\\\.b\\\"\"");
    }
}
