//! The FUSE adapter (fuser): inodes, attributes, xattrs, `.stats`, errno
//! mapping. Thin: it translates FUSE calls into `template` calls.
