//! The thread that moves frames between a device and a [`super::Stack`].
//! STUB: to be implemented.
