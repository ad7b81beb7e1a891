//! The snapshots service, for reading an image containerd unpacked: a read-only view of its top
//! snapshot under the client's lease (containerd adds a snapshot created with the lease header to
//! the lease, so garbage collection keeps it and the chain below it; once the lease expires after
//! a killed run, the next collection removes it), its mounts, and its removal. Nothing here
//! mounts anything.

use super::{Client, CALL_TIMEOUT};
use anyhow::{bail, Result};
use containerd_client::services::v1 as api;
use tonic::Code;

/// One mount of a snapshot: type, source, options.
pub(in crate::image) type Mount = (String, String, Vec<String>);

impl Client {
    /// A read-only view (`key`) of the committed snapshot `parent` in `snapshotter`, created
    /// under this client's lease (containerd adds it to the lease, so garbage collection keeps
    /// it and the chain below it while it is read; an expired lease lets it go): its mounts
    /// as (type, source, options). `None` when that snapshotter has no such snapshot.
    pub(in crate::image) fn snapshot_view(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Option<Vec<Mount>>> {
        let lease = self.lease()?;
        let mut c = api::snapshots::snapshots_client::SnapshotsClient::new(self.0.channel.clone());
        let req = self.request(
            api::snapshots::ViewSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: Default::default(),
            },
            Some(&lease),
        )?;
        let fut = async move { c.view(req).await };
        let r = self
            .0
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await });
        let what = format!("taking a view of the snapshot {parent} ({snapshotter})");
        match r {
            Ok(Ok(v)) => Ok(Some(
                v.into_inner()
                    .mounts
                    .into_iter()
                    .map(|m| (m.r#type, m.source, m.options))
                    .collect(),
            )),
            // No such parent, or no such snapshotter in this containerd ("snapshotter not
            // loaded: NAME: invalid argument").
            Ok(Err(st))
                if matches!(st.code(), Code::NotFound | Code::FailedPrecondition)
                    || (st.code() == Code::InvalidArgument
                        && st.message().contains("not loaded")) =>
            {
                log::debug!("{what}: {}", st.message());
                Ok(None)
            }
            Ok(Err(st)) => Err(self.explain(&what, &st)),
            Err(_) => bail!("{what}: {} did not answer", self.describe()),
        }
    }

    /// Removes the view `key` (the snapshot a run took to read; never an image's own).
    pub(in crate::image) fn snapshot_remove(&self, snapshotter: &str, key: &str) -> Result<()> {
        let mut c = api::snapshots::snapshots_client::SnapshotsClient::new(self.0.channel.clone());
        let req = self.request(
            api::snapshots::RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            },
            None,
        )?;
        self.call(
            &format!("removing the view {key} ({snapshotter})"),
            CALL_TIMEOUT,
            async move { c.remove(req).await },
        )?;
        Ok(())
    }
}
