#pragma once
// Read-only, memory-mapped view of a token-shard dataset (docs/formats.md,
// "Token shards"). The manifest is parsed in Python; the core receives each
// shard's file paths and expected sizes, maps them and checks the structure
// (sizes, index monotone and inside its shard) before any loader reads them.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pocketml::data {

struct ShardFiles {
  std::string tokens_path;
  std::string index_path;
  int64_t num_documents = 0;
  int64_t num_tokens = 0;
};

// One read-only mapping; unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class TokenStore {
 public:
  // token_bytes: 2 (uint16) or 4 (uint32).
  TokenStore(const std::vector<ShardFiles>& shards, int token_bytes, int64_t eos_id);

  int64_t num_documents() const { return total_documents_; }
  int64_t num_tokens() const { return total_tokens_; }
  int token_bytes() const { return token_bytes_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t num_shards() const { return static_cast<int64_t>(tokens_files_.size()); }

  // Document d (global index) as (shard, first token in shard, length).
  struct DocumentSpan {
    int64_t shard;
    int64_t begin;
    int64_t length;
  };
  DocumentSpan document(int64_t d) const;
  int64_t document_length(int64_t d) const { return document(d).length; }

  // Copies tokens [from, from + count) of document d into out (int64).
  // Position == length is the document's EOS, which is not stored.
  void copy_tokens(int64_t d, int64_t from, int64_t count, int64_t* out) const;

  const void* shard_tokens(int64_t shard) const;
  const uint64_t* shard_offsets(int64_t shard) const;
  int64_t shard_num_tokens(int64_t shard) const { return shard_tokens_[shard]; }
  int64_t shard_num_documents(int64_t shard) const { return shard_docs_[shard]; }

 private:
  std::vector<std::unique_ptr<MappedFile>> tokens_files_, index_files_;
  std::vector<int64_t> shard_docs_, shard_tokens_;
  std::vector<int64_t> doc_shard_begin_;  // first global document of each shard, plus the total
  int64_t total_documents_ = 0, total_tokens_ = 0;
  int token_bytes_;
  int64_t eos_id_;
};

}  // namespace pocketml::data
