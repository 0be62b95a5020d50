//! The staging area's leftovers: objects no commit references and (on S3) unfinished
//! multipart uploads of a run that stopped between checkpoints.

use crate::commit::{delete_if_exists, list, store_err};
use crate::lake::{Lake, LakeError, S3Bucket};
use crate::writer::STAGING;
use object_store::path::Path;
use serde::Deserialize;
use std::collections::BTreeSet;

/// Deletes everything under the staging area that `keep` does not name, and (on S3)
/// aborts unfinished multipart uploads under `_fleetflow/`: the leftovers of a run that
/// stopped between checkpoints. Returns how many objects and uploads went.
pub fn clean_staging(
    lake: &Lake,
    rt: &tokio::runtime::Handle,
    keep: &BTreeSet<String>,
) -> Result<usize, LakeError> {
    let mut removed = 0;
    if let Some(dir) = &lake.local_dir {
        // The local store hides its own temporary files (`name#n`) from listings, so walk
        // the directory itself.
        let root = dir.join(STAGING);
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(dir)
                    .map(|r| r.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                if !keep.contains(&rel) {
                    std::fs::remove_file(&p).map_err(|error| LakeError::Io {
                        path: p.display().to_string(),
                        error,
                    })?;
                    removed += 1;
                }
            }
        }
        return Ok(removed);
    }
    let store = lake.store.clone();
    let s3 = lake.s3.clone();
    rt.block_on(async move {
        for m in list(&*store, STAGING)
            .await
            .map_err(|e| store_err(STAGING, e))?
        {
            if !keep.contains(m.location.as_ref()) {
                delete_if_exists(&*store, m.location.as_ref())
                    .await
                    .map_err(|e| store_err(m.location.as_ref(), e))?;
                removed += 1;
            }
        }
        if let Some(bucket) = s3 {
            removed += abort_uploads(&bucket)
                .await
                .map_err(|e| store_err("multipart uploads", e))?;
        }
        Ok(removed)
    })
}

/// S3's answer to `ListMultipartUploads` (the fields read of it).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListMultipartUploadsResult {
    #[serde(default, rename = "Upload")]
    pub(crate) uploads: Vec<UploadEntry>,
}

/// One unfinished upload of a [`ListMultipartUploadsResult`].
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UploadEntry {
    pub(crate) key: String,
    pub(crate) upload_id: String,
}

/// Aborts every unfinished multipart upload under `{prefix}/_fleetflow/`: S3's
/// `ListMultipartUploads`, a request the store has no call for, signed with the store's
/// credentials.
async fn abort_uploads(
    bucket: &S3Bucket,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use object_store::multipart::MultipartStore;
    let under = if bucket.prefix.as_ref().is_empty() {
        "_fleetflow/".to_string()
    } else {
        format!("{}/_fleetflow/", bucket.prefix)
    };
    let mut url = reqwest::Url::parse(&format!("{}/", bucket.url))?;
    url.query_pairs_mut()
        .append_pair("prefix", &under)
        .append_pair("uploads", "");
    let mut request: object_store::client::HttpRequest = http::Request::get(url.as_str())
        .body(object_store::client::HttpRequestBody::from(Vec::new()))?;
    let credential = bucket.store.credentials().get_credential().await?;
    object_store::aws::AwsAuthorizer::new(&credential, "s3", &bucket.region)
        .authorize(&mut request, None);
    let mut get = reqwest::Client::new().get(url);
    for (name, value) in request.headers() {
        get = get.header(name.as_str(), value.as_bytes());
    }
    let s3 = &bucket.store;
    let body = get.send().await?.error_for_status()?.text().await?;
    let listed: ListMultipartUploadsResult = quick_xml::de::from_str(&body)?;
    let mut n = 0;
    for upload in listed.uploads {
        s3.abort_multipart(&Path::from(upload.key), &upload.upload_id)
            .await?;
        n += 1;
    }
    Ok(n)
}
