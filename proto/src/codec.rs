//! The gRPC codec of safebet's services: prost encoding, and decoding from one contiguous slice.
//!
//! tonic hands a decoder a `DecodeBuf`, whose `Buf` methods bounds-check and advance for every value read;
//! a `Decide` carries hundreds of packed doubles, so decoding element by element through it cost about a tenth
//! of the server's time under load. The message is almost always in one chunk already, so this decoder reads
//! it as a plain `&[u8]` (copying only when it is split).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// A prost codec whose decoder reads the message as one slice.
#[derive(Debug, Clone)]
pub struct SliceCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder { _type: PhantomData }
    }
}

/// Decodes a `U` from one contiguous slice.
#[derive(Debug, Clone, Default)]
pub struct SliceDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = U::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            U::decode(&buf.copy_to_bytes(len)[..])
        };
        // As tonic's own codec does, following gRPC's status code guide for unparsable messages.
        decoded.map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
