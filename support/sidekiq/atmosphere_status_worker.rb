# A Sidekiq server standing in for Atmosphere's real status worker, races included.
#
#   REDIS_URL=redis://... SIDEKIQ_NAMESPACE=atmosphere FEEDBACK_FILE=/path/feedback.jsonl \
#   MIGRATION_JOBS_FILE=/path/migration_jobs.json [STORE_LATENCY_MS=30] [STARTED_FILE=/path/started.jsonl] \
#     sidekiq -r ./atmosphere_status_worker.rb -q feedback -c 10
#
# Atmosphere's Atmosphere::UpdateMigrationJobStatusWorker (queue feedback, retry false) does, per job:
#
#   migration_job = MigrationJob.find_or_initialize_by(virtual_machine_template: vmt,
#                                                      tenant_source: ..., tenant_destination: ...)
#   migration_job.status = "#{migration_job.status} #{status}"
#   migration_job.save
#
# on Sidekiq's thread pool, with no lock, on a table with a unique index (atmo_mj_ix) on
# (template, source, destination); its admin page shows `status.lines.last`. This file does the
# same against an in-process table: a Hash keyed by [vmt_uuid, source, destination] whose Mutex
# guards one read or one write, never both. Between the read and the write it sleeps
# STORE_LATENCY_MS (default 30: a SELECT, Rails' callbacks, an UPDATE). So, as in Atmosphere:
# - two jobs for a row that does not exist yet both build a new record; the second INSERT raises
#   ActiveRecord::RecordNotUnique and, retry being false, its line is gone;
# - two jobs for an existing row both read it and both write it: the later write wins (lost update).
# (Unlike Atmosphere it does not look the template up, so an unknown image uuid does not raise.)
#
# Outputs:
# - MIGRATION_JOBS_FILE: after each save, the whole table as one JSON object
#   {"<uuid> <source> <destination>": "<status text>"}, written atomically (tmp file + rename);
# - FEEDBACK_FILE: one JSON line per performed job, in the order they ended:
#   {"seq": n, "args": [uuid, source, destination, status], "job": <the job hash>, "error": null | "Class: message"};
# - STARTED_FILE (optional): one JSON line {"seq": n, "jid": ...} per job when it starts. `seq`
#   numbers the jobs in the order they were taken from the queue (= the order they were pushed).
require "json"
require "sidekiq"
require "redis-namespace"
require_relative "redis_options"

module AtmosphereDouble
  SEQ_LOCK = Mutex.new
  @seq = 0

  def self.next_seq
    SEQ_LOCK.synchronize { @seq += 1 }
  end

  def self.append(path, data)
    File.open(path, "a") do |f|
      f.flock(File::LOCK_EX)
      f.puts(JSON.generate(data))
    end
  end
end

Sidekiq.configure_server do |config|
  config.redis = SidekiqDouble.redis_options
  config.server_middleware do |chain|
    chain.add(Class.new do
      def call(_worker, job, _queue)
        seq = AtmosphereDouble.next_seq
        started = ENV["STARTED_FILE"]
        AtmosphereDouble.append(started, "seq" => seq, "jid" => job["jid"]) if started && !started.empty?
        Thread.current[:feedback_job] = job
        Thread.current[:feedback_seq] = seq
        yield
      ensure
        Thread.current[:feedback_job] = nil
        Thread.current[:feedback_seq] = nil
      end
    end)
  end
end

module ActiveRecord
  class ActiveRecordError < StandardError; end

  class RecordNotUnique < ActiveRecordError; end
end

module Atmosphere
  # The migration_jobs table, reduced to its unique key and the status text column.
  class MigrationJob
    TABLE = {}
    TABLE_LOCK = Mutex.new

    attr_accessor :status

    # One SELECT: a copy of the row as it is now, or a new (unsaved) record.
    def self.find_or_initialize_by(key)
      TABLE_LOCK.synchronize do
        if TABLE.key?(key)
          new(key, TABLE[key].dup, true)
        else
          new(key, nil, false)
        end
      end
    end

    def initialize(key, status, persisted)
      @key, @status, @persisted = key, status, persisted
    end

    # One INSERT (raises on the unique index when the key exists by now) or one UPDATE (overwrites).
    def save
      TABLE_LOCK.synchronize do
        if !@persisted && TABLE.key?(@key)
          raise ActiveRecord::RecordNotUnique,
                'PG::UniqueViolation: ERROR:  duplicate key value violates unique constraint "atmo_mj_ix"'
        end
        TABLE[@key] = @status.dup
        @persisted = true
        self.class.dump
      end
      true
    end

    # Called with TABLE_LOCK held: files are written in the order of the saves.
    def self.dump
      path = ENV.fetch("MIGRATION_JOBS_FILE")
      tmp = "#{path}.tmp"
      File.write(tmp, JSON.generate(TABLE.to_h { |key, status| [key.join(" "), status] }))
      File.rename(tmp, path)
    end
  end

  class UpdateMigrationJobStatusWorker
    include Sidekiq::Worker

    sidekiq_options queue: :feedback
    sidekiq_options retry: false

    STORE_LATENCY = Float(ENV.fetch("STORE_LATENCY_MS", "30")) / 1000

    def perform(vmt_uuid, source_tenant_id, dest_tenant_id, status)
      error = nil
      begin
        migration_job = MigrationJob.find_or_initialize_by([vmt_uuid, source_tenant_id, dest_tenant_id])
        sleep(STORE_LATENCY)
        migration_job.status = "#{migration_job.status} #{status}"
        migration_job.save
      rescue StandardError => e
        error = "#{e.class}: #{e.message}"
        raise
      ensure
        AtmosphereDouble.append(ENV.fetch("FEEDBACK_FILE"),
                                "seq" => Thread.current[:feedback_seq],
                                "args" => [vmt_uuid, source_tenant_id, dest_tenant_id, status],
                                "job" => Thread.current[:feedback_job], "error" => error)
      end
    end
  end
end
