//! Ranged reads of a `RemoteStore`: one streamed GET for a small range,
//! parallel parts delivered in order for a large one.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::{GetOptions, ObjectStore};

use super::RemoteStore;
use super::errors::store_error;
use super::reader::{Ahead, ChannelReader};
use crate::format::ObjectKey;
use crate::store::StoreError;

/// Ranged reads from this size on are split into parallel parts.
pub(super) const SPLIT_READ_THRESHOLD: u64 = 8 << 20;
/// Size of one part of a split read.
const READ_PART_SIZE: u64 = 4 << 20;
/// Parts of one split read in flight at once.
const READ_PARTS_IN_FLIGHT: usize = 4;

impl RemoteStore {
    /// One ranged GET whose body streams to the reader as it arrives.
    pub(super) fn stream_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let name = key.to_string();
        let options = GetOptions {
            range: Some(range.into()),
            ..GetOptions::default()
        };
        let result = match self.run(&name, self.client.get_opts(&self.path(key), options)) {
            Ok(result) => result,
            Err(e) if is_past_end(&e) => return Ok(Box::new(io::empty())),
            Err(e) => return Err(e),
        };
        let location = self.location.clone();
        let stream = result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| store_error(&location, &name, e)))
            .boxed();
        // The read is under SPLIT_READ_THRESHOLD: let it arrive whatever the
        // reader does, so a busy reader cannot make it time out.
        Ok(Box::new(ChannelReader::spawn(
            &self.runtime,
            stream,
            Ahead::Everything,
        )))
    }

    /// Parts of `READ_PART_SIZE` fetched `READ_PARTS_IN_FLIGHT` at a time and
    /// delivered in order; the first part's failure is returned here. Each
    /// part is its own task, so parts keep arriving while the reader is busy.
    pub(super) fn split_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.path(key);
        let name = key.to_string();
        let location = self.location.clone();
        let client = Arc::clone(&self.client);
        let runtime = self.runtime.handle().clone();
        let parts = split_parts(range);
        let mut stream = futures::stream::iter(parts)
            .map(move |part| {
                let (client, path) = (Arc::clone(&client), path.clone());
                let (part_location, part_name) = (location.clone(), name.clone());
                let fetch = runtime.spawn(async move {
                    let wanted = part.end - part.start;
                    match client.get_range(&path, part).await {
                        Ok(bytes) => Ok((bytes, wanted)),
                        Err(e) => match store_error(&part_location, &part_name, e) {
                            e if is_past_end(&e) => Ok((Bytes::new(), wanted)),
                            e => Err(e),
                        },
                    }
                });
                let (location, name) = (location.clone(), name.clone());
                async move {
                    fetch.await.unwrap_or_else(|stopped| {
                        Err(StoreError::Remote {
                            location,
                            key: name,
                            status: None,
                            message: format!("fetch of a part stopped: {stopped}"),
                            transient: false,
                        })
                    })
                }
            })
            .buffered(READ_PARTS_IN_FLIGHT)
            .scan(false, |ended, part| {
                // A short part means the object ended there; an error ends
                // the read.
                if *ended {
                    return futures::future::ready(None);
                }
                *ended = !matches!(&part, Ok((bytes, wanted)) if bytes.len() as u64 == *wanted);
                futures::future::ready(Some(part.map(|(bytes, _)| bytes)))
            })
            .boxed();
        let first = match self.runtime.block_on(stream.next()) {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(e),
            None => return Ok(Box::new(io::empty())),
        };
        let stream = futures::stream::once(futures::future::ready(Ok(first)))
            .chain(stream)
            .boxed();
        Ok(Box::new(ChannelReader::spawn(
            &self.runtime,
            stream,
            Ahead::Chunks(1),
        )))
    }
}

/// A range that starts at or past the end of the object: a read of nothing.
fn is_past_end(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Remote {
            status: Some(416),
            ..
        }
    )
}

/// `range` cut into `READ_PART_SIZE` pieces.
pub(super) fn split_parts(range: Range<u64>) -> Vec<Range<u64>> {
    let mut parts = Vec::with_capacity(
        usize::try_from((range.end - range.start).div_ceil(READ_PART_SIZE)).unwrap_or(0),
    );
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start + READ_PART_SIZE);
        parts.push(start..end);
        start = end;
    }
    parts
}
