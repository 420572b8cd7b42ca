//! The images the control plane still needs: every revision's and job's pinned image and
//! every execution's. Image garbage collection keeps these (and their unpacked layers) even
//! when no tag or manifest in the registry names them any more, so a running instance, a
//! traffic rollback to an old revision or a job's next execution never loses its rootfs.

use wharf_image::ResolvedImage;

use crate::{ControlError, ControlPlane};

/// The part of a stored `ExecutionSpec` that names its image.
#[derive(serde::Deserialize)]
struct ExecutionImage {
    image: ResolvedImage,
}

impl ControlPlane {
    /// The images of all stored revisions, jobs and executions (duplicates included).
    pub fn pinned_images(&self) -> Result<Vec<ResolvedImage>, ControlError> {
        let (images, executions): (Vec<String>, Vec<String>) = self.inner.db.read(|c| {
            let mut stmt = c.prepare("SELECT image FROM revisions UNION ALL SELECT image FROM jobs")?;
            let images = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            let mut stmt = c.prepare("SELECT spec FROM executions")?;
            let executions = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok((images, executions))
        })?;
        let mut pinned = Vec::with_capacity(images.len() + executions.len());
        for text in images {
            pinned.push(serde_json::from_str(&text).map_err(ControlError::json("pinned image"))?);
        }
        for text in executions {
            let spec: ExecutionImage = serde_json::from_str(&text).map_err(ControlError::json("execution spec"))?;
            pinned.push(spec.image);
        }
        Ok(pinned)
    }
}
