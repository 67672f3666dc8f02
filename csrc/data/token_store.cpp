#include "data/token_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "runtime/error.h"

namespace pocketml::data {

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorKind::Runtime, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::Runtime, "cannot stat '" + path + "': " + std::strerror(err));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (data_ == MAP_FAILED) {
      const int err = errno;
      data_ = nullptr;
      ::close(fd);
      fail(ErrorKind::Runtime, "cannot map '" + path + "': " + std::strerror(err) +
                                   (err == ENOMEM ? " (a dataset maps two files per shard: past ~32k shards the "
                                                    "process runs out of mappings, vm.max_map_count; write fewer, "
                                                    "larger shards)"
                                                  : ""));
    }
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

namespace {

std::string shard_name(const ShardFiles& s) { return "shard '" + s.tokens_path + "'"; }

// Fails with a message naming the file, the expected and the actual size:
// the first thing a truncated or overwritten shard shows.
void require_size(const std::string& path, size_t actual, size_t expected) {
  if (actual != expected)
    fail(ErrorKind::Runtime, "'" + path + "' has " + std::to_string(actual) + " bytes, the manifest expects " +
                                 std::to_string(expected) + (actual < expected ? " (truncated)" : ""));
}

}  // namespace

TokenStore::TokenStore(const std::vector<ShardFiles>& shards, int token_bytes, int64_t eos_id)
    : token_bytes_(token_bytes), eos_id_(eos_id) {
  if (token_bytes != 2 && token_bytes != 4)
    fail_argument(ErrorKind::InvalidArgument, "token_bytes", "2 (uint16) or 4 (uint32)", std::to_string(token_bytes));
  for (const ShardFiles& s : shards) {
    if (s.num_documents < 0 || s.num_tokens < 0)
      fail(ErrorKind::Runtime, shard_name(s) + ": negative document or token count in the manifest");
    // Counts no file could hold would wrap the expected sizes below (to 0 for an empty file).
    constexpr int64_t kMaxBytes = std::numeric_limits<int64_t>::max() / 8;
    if (s.num_documents >= kMaxBytes / 8 || s.num_tokens >= kMaxBytes / token_bytes)
      fail(ErrorKind::Runtime, shard_name(s) + ": " + std::to_string(s.num_documents) + " documents and " +
                                   std::to_string(s.num_tokens) + " tokens in the manifest, more than a file holds");
    auto tokens = std::make_unique<MappedFile>(s.tokens_path);
    auto index = std::make_unique<MappedFile>(s.index_path);
    require_size(s.tokens_path, tokens->size(), static_cast<size_t>(s.num_tokens) * token_bytes);
    require_size(s.index_path, index->size(), static_cast<size_t>(s.num_documents + 1) * sizeof(uint64_t));
    // The index must start at 0, never decrease and end exactly at the shard's
    // token count; anything else would let a reader step outside the mapping.
    const auto* offsets = static_cast<const uint64_t*>(index->data());
    if (offsets[0] != 0)
      fail(ErrorKind::Runtime, "'" + s.index_path + "': the first offset is " + std::to_string(offsets[0]) +
                                   ", expected 0");
    for (int64_t d = 0; d < s.num_documents; ++d) {
      if (offsets[d + 1] < offsets[d] || offsets[d + 1] > static_cast<uint64_t>(s.num_tokens))
        fail(ErrorKind::Runtime, "'" + s.index_path + "': document " + std::to_string(d) + " spans tokens [" +
                                     std::to_string(offsets[d]) + ", " + std::to_string(offsets[d + 1]) +
                                     "), outside its shard of " + std::to_string(s.num_tokens) + " tokens");
    }
    if (offsets[s.num_documents] != static_cast<uint64_t>(s.num_tokens))
      fail(ErrorKind::Runtime, "'" + s.index_path + "': the last offset is " +
                                   std::to_string(offsets[s.num_documents]) + ", expected the shard's " +
                                   std::to_string(s.num_tokens) + " tokens");
    doc_shard_begin_.push_back(total_documents_);
    shard_docs_.push_back(s.num_documents);
    shard_tokens_.push_back(s.num_tokens);
    total_documents_ += s.num_documents;
    total_tokens_ += s.num_tokens;
    tokens_files_.push_back(std::move(tokens));
    index_files_.push_back(std::move(index));
  }
  doc_shard_begin_.push_back(total_documents_);
}

const void* TokenStore::shard_tokens(int64_t shard) const { return tokens_files_[shard]->data(); }

const uint64_t* TokenStore::shard_offsets(int64_t shard) const {
  return static_cast<const uint64_t*>(index_files_[shard]->data());
}

TokenStore::DocumentSpan TokenStore::document(int64_t d) const {
  if (d < 0 || d >= total_documents_)
    fail_argument(ErrorKind::InvalidArgument, "index", "a document in [0, " + std::to_string(total_documents_) + ")",
                  std::to_string(d));
  // upper_bound over the shards' first documents finds the shard holding d.
  const auto it = std::upper_bound(doc_shard_begin_.begin(), doc_shard_begin_.end(), d);
  const int64_t shard = (it - doc_shard_begin_.begin()) - 1;
  const int64_t local = d - doc_shard_begin_[shard];
  const uint64_t* offsets = shard_offsets(shard);
  return {shard, static_cast<int64_t>(offsets[local]), static_cast<int64_t>(offsets[local + 1] - offsets[local])};
}

void TokenStore::copy_tokens(int64_t d, int64_t from, int64_t count, int64_t* out) const {
  const DocumentSpan span = document(d);
  const int64_t stored = std::max<int64_t>(0, std::min(count, span.length - from));
  const int64_t first = span.begin + from;
  if (token_bytes_ == 2) {
    const auto* src = static_cast<const uint16_t*>(shard_tokens(span.shard)) + first;
    for (int64_t i = 0; i < stored; ++i) out[i] = src[i];
  } else {
    const auto* src = static_cast<const uint32_t*>(shard_tokens(span.shard)) + first;
    for (int64_t i = 0; i < stored; ++i) out[i] = src[i];
  }
  for (int64_t i = stored; i < count; ++i) out[i] = eos_id_;  // only the EOS slot lies past the stored tokens
}

}  // namespace pocketml::data
