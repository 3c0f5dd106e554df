//! The destination's missing image blobs from the image's registry first; whatever that does
//! not bring (registry unreachable, refused, tampered) is asked of the source as before.
//!
//! The registry is the one the image's own name points at (`reg:5000/team/app:v1`, as a
//! pulled or pushed image is named); an image with only local names (`busybox:latest`) comes
//! from the source. The destination uses its own trust and credentials for the registry
//! (`<root>/certs.d`, `<root>/registries.json`, its auth files).

use ferry_proto::ImageOffer;

use crate::container::Engine;
use crate::image::registry::{fetch_blobs, ImageRef, RegistryConfig};
use crate::image::Digest;

/// What the registry brought.
#[derive(Debug, Default)]
pub(crate) struct FromRegistry {
    /// The registry tried, if the image names one.
    pub registry: Option<String>,
    pub fetched: Vec<Digest>,
    pub bytes: u64,
    /// Why the source must send (some of) them after all.
    pub fallback: Option<String>,
}

/// The registry an image's names point at, if any (what the destination tries first).
pub(crate) fn registry_named(names: &[String]) -> Option<String> {
    names
        .iter()
        .find_map(|n| ImageRef::explicit(n))
        .map(|r| r.registry().to_owned())
}

/// Fetches the blobs in `need` from the registry the offer's names point at. Never fails:
/// a registry that cannot help leaves the blobs to the source, and says why.
pub(crate) async fn fetch_from_registry(
    engine: &Engine,
    offer: &ImageOffer,
    need: &[String],
) -> FromRegistry {
    let mut out = FromRegistry::default();
    if need.is_empty() {
        return out;
    }
    let Some(r) = offer.names.iter().find_map(|n| ImageRef::explicit(n)) else {
        // Only local names: the source sends it.
        return out;
    };
    out.registry = Some(r.registry().to_owned());
    let (manifest, blobs) = match wanted(offer, need) {
        Ok(x) => x,
        Err(why) => {
            out.fallback = Some(why);
            return out;
        }
    };
    let cfg = RegistryConfig::new(engine.paths().root(), Vec::new());
    let store = engine.images();
    match fetch_blobs(store, &cfg, r.registry(), r.repository(), &manifest, &blobs).await {
        Ok((fetched, bytes)) => {
            tracing::info!(
                registry = r.registry(),
                blobs = fetched.len(),
                bytes,
                "image blobs from the registry"
            );
            out.fetched = fetched;
            out.bytes = bytes;
        }
        Err(e) => {
            tracing::warn!(registry = r.registry(), error = %e, "the registry cannot help; the source sends the image blobs");
            out.fallback = Some(e.to_string());
        }
    }
    out
}

fn wanted(offer: &ImageOffer, need: &[String]) -> Result<(Digest, Vec<(Digest, u64)>), String> {
    let manifest = Digest::parse(&offer.manifest).map_err(|e| e.to_string())?;
    let blobs = offer
        .blobs
        .iter()
        .filter(|b| need.contains(&b.digest))
        .map(|b| Digest::parse(&b.digest).map(|d| (d, b.size)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((manifest, blobs))
}
