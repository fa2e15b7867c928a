# A Sidekiq server standing in for Atmosphere's side of the feedback queue.
#
#   REDIS_URL=redis://... SIDEKIQ_NAMESPACE=atmosphere FEEDBACK_FILE=/path/feedback.jsonl \
#     sidekiq -r ./feedback_worker.rb -q feedback -c 1
#
# It runs a tiny Atmosphere::UpdateMigrationJobStatusWorker (same name, queue and options as
# Atmosphere's) that appends each job it performs to FEEDBACK_FILE as one JSON line:
#   {"args": [image_uuid, source_site_id, destination_site_id, status], "job": <the job hash>}
require "json"
require "sidekiq"
require "redis-namespace"
require_relative "redis_options"

Sidekiq.configure_server do |config|
  config.redis = SidekiqDouble.redis_options
  config.server_middleware do |chain|
    chain.add(Class.new do
      def call(_worker, job, _queue)
        Thread.current[:feedback_job] = job
        yield
      ensure
        Thread.current[:feedback_job] = nil
      end
    end)
  end
end

module Atmosphere
  class UpdateMigrationJobStatusWorker
    include Sidekiq::Worker

    sidekiq_options queue: :feedback
    sidekiq_options retry: false

    def perform(vmt_uuid, source_site_id, dest_site_id, status)
      line = JSON.generate("args" => [vmt_uuid, source_site_id, dest_site_id, status],
                           "job" => Thread.current[:feedback_job])
      File.open(ENV.fetch("FEEDBACK_FILE"), "a") do |f|
        f.flock(File::LOCK_EX)
        f.puts(line)
      end
    end
  end
end
