//! The stream's codec: prost encoding with small per-stream buffers. tonic's default gives every
//! stream an 8 KiB encode and an 8 KiB decode buffer up front; an aggregator holds one stream
//! per node, and at 10,000 nodes those buffers were 160 MiB of its heap while a batch of ten
//! results is about 1 KiB. The buffers still grow to the largest message (up to
//! [`crate::MAX_MESSAGE_BYTES`]).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers, bytes.
pub const STREAM_BUFFER_BYTES: usize = 1024;

/// Encoded bytes a stream buffers before it yields to the transport (tonic's default).
pub const STREAM_YIELD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, STREAM_YIELD_BYTES)
}

/// [`ProstCodec`] with [`STREAM_BUFFER_BYTES`] buffers; the generated client and server use it.
#[derive(Debug, Clone, Copy)]
pub struct NurseCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for NurseCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for NurseCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::Encoder;

    #[test]
    fn buffers_start_small() {
        let mut codec = NurseCodec::<crate::v1::AgentMessage, crate::v1::AgentMessage>::default();
        let want = format!("buffer_size: {STREAM_BUFFER_BYTES},");
        assert!(format!("{:?}", codec.encoder().buffer_settings()).contains(&want));
        assert!(format!("{:?}", tonic::codec::Decoder::buffer_settings(&codec.decoder())).contains(&want));
    }
}
