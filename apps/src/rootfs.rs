//! An app's root: its image's layers, each unpacked once into the store
//! and shared, under an overlay with the app's own upper directory.
//!
//! Layers are unpacked into `layers/HEX.tmp` and renamed to `layers/HEX`
//! only when complete and their `diff_id` matches the image config: a
//! power cut mid-unpack leaves a `.tmp` that the store clears when it
//! opens, never a half layer that looks whole.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pull::Image;
use crate::reference::Digest;
use crate::store::Store;
use crate::unpack::{unpack_layer, Options, UnpackError};

/// The most bytes of overlay mount options: one page (the kernel copies
/// mount data into a page).
pub const MAX_MOUNT_DATA: usize = 4000;

/// Why a root could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A layer was refused or failed to unpack.
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer blob.
        layer: Digest,
        /// Why.
        source: UnpackError,
    },
    /// The unpacked stream does not hash to the config's diff_id.
    #[error("layer {layer}: unpacks to {got}, but the image config says {expected}; the image was refused")]
    DiffId {
        /// The layer blob.
        layer: Digest,
        /// The config's diff_id.
        expected: Digest,
        /// What the stream hashed to.
        got: Digest,
    },
    /// Too many layers for one overlay mount.
    #[error("the image has {0} layers, too many for one overlay mount on this node (its paths exceed {MAX_MOUNT_DATA} bytes)")]
    TooManyLayers(usize),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks every layer of `image` not unpacked yet; returns the layer
/// directories, bottom first.
pub fn prepare_layers(
    store: &Store,
    image: &Image,
    opts: &Options,
) -> Result<Vec<PathBuf>, RootfsError> {
    let mut dirs = Vec::with_capacity(image.layers.len());
    store.ensure_dirs().map_err(|e| RootfsError::Io {
        path: store.root().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for (layer, diff_id) in image.layers.iter().zip(&image.diff_ids) {
        let done = store.layer_path(layer);
        if !done.is_dir() {
            let tmp = store.layer_tmp_path(layer);
            crate::store::remove_tree(&tmp).map_err(io(&tmp))?;
            fs::create_dir(&tmp).map_err(io(&tmp))?;
            let blob_path = store.blob_path(layer);
            let blob = fs::File::open(&blob_path).map_err(io(&blob_path))?;
            let report = unpack_layer(blob, &tmp, opts).map_err(|source| RootfsError::Unpack {
                layer: *layer,
                source,
            })?;
            if report.diff_id != *diff_id {
                let _ = crate::store::remove_tree(&tmp);
                return Err(RootfsError::DiffId {
                    layer: *layer,
                    expected: *diff_id,
                    got: report.diff_id,
                });
            }
            // Make the unpacked files durable before the name says done.
            let d = fs::File::open(&tmp).map_err(io(&tmp))?;
            // SAFETY: a valid fd for the call's duration.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } < 0 {
                return Err(RootfsError::Io {
                    path: tmp,
                    source: std::io::Error::last_os_error(),
                });
            }
            fs::rename(&tmp, &done).map_err(io(&done))?;
        }
        dirs.push(done);
    }
    Ok(dirs)
}

/// The overlay mount options for these layers (bottom first) and the
/// app's upper and work directories.
pub fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, RootfsError> {
    // overlayfs lists lowerdir top first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    for p in lower
        .iter()
        .map(String::as_str)
        .chain([upper.to_str().unwrap_or(","), work.to_str().unwrap_or(",")])
    {
        if p.contains([',', ':', '\\']) {
            return Err(RootfsError::Io {
                path: PathBuf::from(p),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a path with ',', ':' or '\\'",
                ),
            });
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() > MAX_MOUNT_DATA {
        return Err(RootfsError::TooManyLayers(layers.len()));
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lower_layers_are_listed_top_first_and_bounded() {
        let layers = vec![PathBuf::from("/s/layers/a"), PathBuf::from("/s/layers/b")];
        let o = overlay_options(&layers, Path::new("/a/upper"), Path::new("/a/work")).unwrap();
        assert!(
            o.starts_with("lowerdir=/s/layers/b:/s/layers/a,upperdir=/a/upper,workdir=/a/work"),
            "{o}"
        );
        let many: Vec<PathBuf> = (0..60)
            .map(|i| PathBuf::from(format!("/var/lib/fluxnode/oci/layers/{:064x}", i)))
            .collect();
        assert!(matches!(
            overlay_options(&many, Path::new("/u"), Path::new("/w")),
            Err(RootfsError::TooManyLayers(60))
        ));
        assert!(
            overlay_options(&[PathBuf::from("/x:y")], Path::new("/u"), Path::new("/w")).is_err()
        );
    }
}
