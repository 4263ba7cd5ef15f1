//! Multipart uploads of a `RemoteStore`: a large file goes up in parts, in
//! order, a few at a time, and becomes the object only when complete.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path as FsPath;

use object_store::{Attributes, MultipartUpload, ObjectStore, PutMultipartOptions, PutPayload};
use tokio::task::JoinHandle;

use super::errors::store_error;
use super::{RemoteStore, local_io};
use crate::format::ObjectKey;
use crate::store::StoreError;

/// Files from this size on are uploaded in parts.
pub(super) const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of one uploaded part (S3 wants at least 5 MiB but for the last).
const UPLOAD_PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

impl RemoteStore {
    /// Upload `file` in parts, in order, a few at a time; the parts become
    /// the object only when the upload completes.
    pub(super) fn put_multipart(
        &self,
        key: &ObjectKey,
        file: File,
        source: &FsPath,
        attributes: Attributes,
    ) -> Result<(), StoreError> {
        let name = key.to_string();
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.run(
            &name,
            self.client.put_multipart_opts(&self.path(key), options),
        )?;
        let sent = self.upload_parts(&name, upload.as_mut(), file, source);
        let completed = sent.and_then(|()| self.run(&name, upload.complete()).map(drop));
        if completed.is_err() {
            // Best effort: the server also expires abandoned uploads.
            let _ = self.runtime.block_on(upload.abort());
        }
        completed
    }

    fn upload_parts(
        &self,
        name: &str,
        upload: &mut dyn MultipartUpload,
        mut file: File,
        source: &FsPath,
    ) -> Result<(), StoreError> {
        let mut in_flight: VecDeque<JoinHandle<object_store::Result<()>>> = VecDeque::new();
        let result = (|| {
            loop {
                let part =
                    read_part(&mut file, UPLOAD_PART_SIZE).map_err(|e| local_io(source, e))?;
                if part.is_empty() {
                    break;
                }
                if in_flight.len() >= UPLOAD_PARTS_IN_FLIGHT {
                    let oldest = in_flight.pop_front().expect("parts in flight");
                    self.join_part(name, oldest)?;
                }
                let last = part.len() < UPLOAD_PART_SIZE;
                in_flight.push_back(self.runtime.spawn(upload.put_part(PutPayload::from(part))));
                if last {
                    break;
                }
            }
            while let Some(part) = in_flight.pop_front() {
                self.join_part(name, part)?;
            }
            Ok(())
        })();
        for part in in_flight {
            part.abort();
        }
        result
    }

    fn join_part(
        &self,
        name: &str,
        part: JoinHandle<object_store::Result<()>>,
    ) -> Result<(), StoreError> {
        match self.runtime.block_on(part) {
            Ok(sent) => sent.map_err(|e| store_error(&self.location, name, e)),
            Err(join) => Err(StoreError::Remote {
                location: self.location.clone(),
                key: name.to_string(),
                status: None,
                message: format!("upload of a part stopped: {join}"),
                transient: false,
            }),
        }
    }
}

/// Up to `size` bytes from `file`: fewer only at its end.
fn read_part(file: &mut File, size: usize) -> io::Result<Vec<u8>> {
    let mut part = Vec::with_capacity(size);
    file.take(size as u64).read_to_end(&mut part)?;
    Ok(part)
}
