//! The pure logic of a KKA round: seeds, hard/easy splitting, pools, the generator update and
//! the DPO export. Nothing here touches RabbitMQ or Redis.

pub mod dpo;
pub mod pools;
pub mod seeds;
pub mod split;
pub mod update;
